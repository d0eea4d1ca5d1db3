# mixpanel-rotator container image: the daemon (`run`) by default.
#   docker build -t mixpanel-rotator .
# Mount the policy at /etc/mixpanel-rotator/policy.toml (or set
# MIXPANEL_ROTATOR_CONFIG). For a one-shot pass (a CronJob), override the
# command: `reconcile`.
#
# The two base images are build arguments (a mirror, a pinned digest):
#   docker build --build-arg BUILD_IMAGE=registry.example/rust:1-bookworm \
#     --build-arg RUNTIME_IMAGE=registry.example/distroless/cc-debian12:nonroot .
# The runtime image needs glibc (Debian 12's or newer) and nothing else.
# To package a binary built elsewhere, replace the build stage with a
# directory holding src/target/release/mixpanel-rotator:
#   podman build --build-context build=DIR .   (scripts/container-test.sh does)
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY build.rs ./
RUN cargo build --release --locked --bin mixpanel-rotator

FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/mixpanel-rotator /usr/local/bin/mixpanel-rotator
USER 65532:65532
ENV MIXPANEL_ROTATOR_CONFIG=/etc/mixpanel-rotator/policy.toml
EXPOSE 9464
ENTRYPOINT ["mixpanel-rotator"]
CMD ["run"]
