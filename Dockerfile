# The ocisync image: one static-ish binary on a distroless base, non-root.
# Build: docker build -t ocisync .   (or any OCI builder: buildah, kaniko)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && cp target/release/ocisync /ocisync

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ocisync /usr/local/bin/ocisync
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ocisync"]
