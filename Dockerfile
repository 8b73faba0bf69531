FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY webhooks ./webhooks
RUN pip install --no-cache-dir .
ENV JOBQUEUE_LOG_DIR=/app/logs
ENTRYPOINT ["jobqueue"]
