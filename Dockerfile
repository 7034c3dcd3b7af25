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
# Dependencies first, so source edits do not rebuild them: the manifest and a
# stub crate. Cargo.toml declares no [[example]], [[bench]] or [[test]]
# targets (those folders are auto-discovered and not needed to build the
# binary); a target declared there later needs a stub file here, or cargo
# stops on the missing path (scripts/check-deploy.sh checks this).
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin taskmaster \
    && rm -rf src
# Everything the binary embeds at compile time: sources (with the dashboard's
# assets), migrations (sqlx::migrate!) and the verdict schema (include_str!).
COPY src src
COPY migrations migrations
COPY schemas schemas
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin taskmaster

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git bubblewrap curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 taskmaster \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin taskmaster \
    && mkdir -p /data /app \
    && chown taskmaster:taskmaster /data
COPY --from=build /src/target/release/taskmaster /usr/local/bin/taskmaster
COPY workflows /app/workflows
WORKDIR /data
# Numeric, so Kubernetes' runAsNonRoot can check it (uid/gid 10001 = taskmaster).
USER 10001:10001
ENV HOST=0.0.0.0 \
    PORT=3000 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite:///data/taskmaster.db \
    TASKMASTER_WORKFLOWS=/app/workflows \
    TASKMASTER_DATA_DIR=/data/taskmaster-data
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${PORT}/api/health\" || exit 1"]
ENTRYPOINT ["taskmaster"]
CMD ["serve"]
