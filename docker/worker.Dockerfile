# The worker image: torch (the PyPI wheels bundle CUDA; the host needs only the NVIDIA driver
# and the NVIDIA container toolkit) and the preempt package with its shipped models.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY preempt ./preempt
RUN pip install --no-cache-dir .
USER nobody
# One worker per GPU: the compose file reserves one device per service and passes --device cuda:0.
CMD ["preempt", "worker", "--device", "cuda:0"]
