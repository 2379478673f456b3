# syntax=docker/dockerfile:1
# Build: docker build -t chat-server .
# Run:   docker run -p 8000:8000 -v chat-data:/data chat-server

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY entity ./entity
COPY migration ./migration
COPY bench ./bench
COPY src ./src
COPY static ./static
COPY vendor ./vendor
RUN cargo build --release --locked --bin chat-server

FROM debian:bookworm-slim
# Unpinned on purpose: the runtime image should pick up Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin chat \
    && mkdir -p /data/attachments && chown -R 10001:10001 /data
COPY --from=build /src/target/release/chat-server /usr/local/bin/chat-server
USER 10001:10001
WORKDIR /data
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DB_NAME=/data/chat.db \
    LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["chat-server"]
CMD ["serve"]
