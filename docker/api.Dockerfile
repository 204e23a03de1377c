# The API image: FastAPI + Celery client + Pillow, no torch (about 150 MB).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN pip install --no-cache-dir "fastapi>=0.115" "uvicorn>=0.29" "celery[redis]>=5.4" "redis>=5" \
        "python-multipart>=0.0.9" "prometheus-client>=0.20" "pillow>=10" "pydantic>=2.6" "pydantic-settings>=2.2" "fastapi-offline>=1.7" "limits>=3.6" "httpx>=0.27"
COPY pyproject.toml README.md ./
COPY preempt ./preempt
# --no-deps: the package's torch dependency is the workers' business, never the API's.
RUN pip install --no-cache-dir --no-deps .
RUN PREEMPT_REDIS_URL=redis://unused python -c "import sys, preempt.api.app; assert 'torch' not in sys.modules"
EXPOSE 8000
USER nobody
CMD ["uvicorn", "preempt.api.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
