# mixpanel-rotator container image: the daemon (`run`) by default.
#   docker build -t mixpanel-rotator .
# Mount the policy at /etc/mixpanel-rotator/policy.toml (or set
# MIXPANEL_ROTATOR_CONFIG). For a one-shot pass (a CronJob), override the
# command: `reconcile`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin mixpanel-rotator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mixpanel-rotator /usr/local/bin/mixpanel-rotator
USER 65532:65532
ENV MIXPANEL_ROTATOR_CONFIG=/etc/mixpanel-rotator/policy.toml
EXPOSE 9464
ENTRYPOINT ["mixpanel-rotator"]
CMD ["run"]
