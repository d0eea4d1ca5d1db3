# mixpanel-rotator container image.
#   docker build -t mixpanel-rotator .
# The default command runs one reconcile pass (a Kubernetes CronJob or a
# scheduled task); mount the policy at /etc/mixpanel-rotator/policy.toml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin mixpanel-rotator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mixpanel-rotator /usr/local/bin/mixpanel-rotator
USER nonroot:nonroot
ENV MIXPANEL_ROTATOR_CONFIG=/etc/mixpanel-rotator/policy.toml
ENTRYPOINT ["mixpanel-rotator"]
CMD ["reconcile"]
