# syntax=docker/dockerfile:1
# The ocisync image: one static binary (musl) on distroless/static, non-root by default.
# The same image runs `ocisync controller` and `ocisync agent` (the chart runs the agent as
# root without capabilities, see charts/ocisync/README.md).
#   docker build -t ocisync .        (or buildah/kaniko; builds for the build host's arch)
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target "$(uname -m)-unknown-linux-musl" \
    && cp "target/$(uname -m)-unknown-linux-musl/release/ocisync" /ocisync

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ocisync /usr/local/bin/ocisync
USER 65532:65532
EXPOSE 9090 9091
ENTRYPOINT ["/usr/local/bin/ocisync"]
