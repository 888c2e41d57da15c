# Builds the service and runs it beside WBIA (see docker-compose.yml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wbia-lightglue

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wbia-lightglue /usr/local/bin/wbia-lightglue
COPY weights /opt/wbia-lightglue/weights
ENV WBIA_LIGHTGLUE_WEIGHTS=/opt/wbia-lightglue/weights \
    WBIA_LIGHTGLUE_DATA_DIR=/data/lightglue
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD curl -fsS http://localhost:5000/health || exit 1
ENTRYPOINT ["wbia-lightglue", "serve"]
