FROM python:3.11-slim
# An unprivileged user runs the processes; the code is root-owned and read-only to it.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin jobqueue
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY webhooks ./webhooks
RUN pip install --no-cache-dir . \
    && mkdir -p /app/logs && chown jobqueue:jobqueue /app/logs
ENV JOBQUEUE_LOG_DIR=/app/logs
USER 10001:10001
ENTRYPOINT ["jobqueue"]
