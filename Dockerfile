# The service on the CPU, for running beside WBIA (docker-compose.yml). Build:
#   docker build -t wbia-lightglue .
# No `# syntax=` line (BuildKit would fetch its frontend from a registry) and no
# `RUN --mount`, so it builds offline and with both BuildKit and the classic builder
# (docker-compose 1.29, a CLI without buildx). scripts/docker-check.sh builds and runs it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# No cache mounts (the classic builder has none): a source change rebuilds the dependencies.
RUN cargo build --release --locked --bin wbia-lightglue \
    && cp target/release/wbia-lightglue /usr/local/bin/wbia-lightglue

FROM debian:bookworm-slim
# curl for the health check; ca-certificates for https WBIA URLs and callbacks. Unpinned: the
# base image's tag is the pin (exact Debian versions vanish from the archive at point releases).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
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
# The check follows WBIA_LIGHTGLUE_PORT: set another port with that variable
# (`-e WBIA_LIGHTGLUE_PORT=8080`), not with `serve --port`, which the check cannot see.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${WBIA_LIGHTGLUE_PORT:-5000}/health" || exit 1
ENTRYPOINT ["wbia-lightglue", "serve"]
