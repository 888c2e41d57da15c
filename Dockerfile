# syntax=docker/dockerfile:1
# The service on the CPU, for running beside WBIA (docker-compose.yml). Build:
#   docker build -t wbia-lightglue .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Dependencies and incremental artefacts live in BuildKit cache mounts, so a rebuild after a
# source change recompiles only this workspace's crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wbia-lightglue \
    && cp target/release/wbia-lightglue /usr/local/bin/wbia-lightglue

FROM debian:bookworm-slim
# curl for the health check; ca-certificates for https WBIA URLs and callbacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data/lightglue lightglue \
    && mkdir -p /v_config/lightglue /data/lightglue \
    && chown lightglue /data/lightglue
COPY --from=build /usr/local/bin/wbia-lightglue /usr/local/bin/wbia-lightglue
COPY weights /opt/wbia-lightglue/weights
COPY NOTICE /opt/wbia-lightglue/NOTICE
ENV WBIA_LIGHTGLUE_WEIGHTS=/opt/wbia-lightglue/weights \
    WBIA_LIGHTGLUE_DATA_DIR=/data/lightglue \
    WBIA_LIGHTGLUE_CONFIG_DIR=/v_config/lightglue \
    WBIA_LIGHTGLUE_PORT=5000
# Configurations (read-only) and the feature store.
VOLUME ["/v_config/lightglue", "/data/lightglue"]
USER lightglue
EXPOSE 5000
# SIGTERM drains requests in flight for up to 30 s, then exits 0: give `docker stop` more
# (`stop_grace_period: 40s` in docker-compose.yml; `docker stop -t 40`).
STOPSIGNAL SIGTERM
# /health answers from memory (it never waits on WBIA): 200 once the models are loaded and
# while the model worker runs. The models load in seconds; the start period covers a slow disk.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:5000/health"]
ENTRYPOINT ["wbia-lightglue", "serve"]
