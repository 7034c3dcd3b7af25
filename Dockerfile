# syntax=docker/dockerfile:1
# taskmaster: a multi-stage build. The runtime image holds the binary, the
# default workflows, CA certificates, git (mirrors and workspaces), bubblewrap
# (the sandbox of `command` steps) and curl (for the health check); it runs as
# an unprivileged user. Workspaces live under /data/workspaces; the database and
# the App's key are never visible inside a step's sandbox.
#
#   docker build -t taskmaster .
#   docker run -p 3000:3000 -e GITHUB_WEBHOOK_SECRET=change-me -v tm-data:/data taskmaster

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for e in engine_bench hmac_ceiling intake_memstore store_insert; do echo 'fn main() {}' > examples/$e.rs; done \
    && cargo build --release --locked --bin taskmaster \
    && rm -rf src examples
COPY src src
COPY migrations migrations
COPY examples examples
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin taskmaster

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git bubblewrap curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin taskmaster \
    && mkdir -p /data /app \
    && chown taskmaster:taskmaster /data
COPY --from=build /src/target/release/taskmaster /usr/local/bin/taskmaster
COPY workflows /app/workflows
WORKDIR /data
USER taskmaster
ENV HOST=0.0.0.0 \
    PORT=3000 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite:///data/taskmaster.db \
    TASKMASTER_WORKFLOWS=/app/workflows \
    TASKMASTER_DATA_DIR=/data/taskmaster-data
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/api/health" > /dev/null || exit 1
ENTRYPOINT ["taskmaster"]
CMD ["serve"]
