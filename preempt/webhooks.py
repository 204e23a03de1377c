"""Webhooks: when a job ends in a worker, its record is POSTed to the job's ``callback_url``, signed.

``Preempt-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the key's webhook secret>``
(:func:`preempt.client.verify_signature` checks it). A delivery is retried with exponential backoff (1, 2,
4 ... 60 s) for ``PREEMPT_WEBHOOK_RETRY_SECONDS``; redirects are not followed; the job record's
``webhook`` says the attempts, the last status and whether it was delivered. Destinations in private,
loopback or link-local ranges are refused when the job is submitted, unless ``PREEMPT_WEBHOOK_ALLOW``
lists them (hosts, addresses or networks, comma-separated).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from typing import Iterable, Optional
from urllib.parse import urlparse

import httpx

log = logging.getLogger("preempt.webhooks")


class WebhookRefused(ValueError):
    """A callback URL this service will not call; the message says why."""


def signature(secret: str, body: bytes, timestamp: Optional[int] = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _allowed(host: str, addresses: Iterable[str], allow: Iterable[str]) -> bool:
    for entry in filter(None, (a.strip() for a in allow)):
        if entry == host:
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if any(ipaddress.ip_address(a) in net for a in addresses):
            return True
    return False


def check_url(url: str, allow: Iterable[str] = ()) -> str:
    """``url`` if the service may call it; :class:`WebhookRefused` otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise WebhookRefused("callback_url must be an http:// or https:// URL with a host")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname, parsed.port or 443)}
    except (socket.gaierror, UnicodeError):
        raise WebhookRefused(f"callback_url: the host {parsed.hostname!r} does not resolve") from None
    private = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_global]
    if private and not _allowed(parsed.hostname, addresses, allow):
        raise WebhookRefused(f"callback_url: {parsed.hostname} is a private or loopback address; "
                             "PREEMPT_WEBHOOK_ALLOW must list it")
    return url


def deliver(store, job_id: str, secret: str, retry_seconds: float, timeout: float = 10.0) -> None:
    """POST the ended job's record to its callback_url until a 2xx or ``retry_seconds`` have passed."""
    from preempt.schemas import Job

    job = store.get(job_id)
    if job is None or not job.get("callback_url"):
        return
    body = Job.from_record(job).model_dump_json().encode()
    deadline, wait, attempts = time.monotonic() + retry_seconds, 1.0, 0
    with httpx.Client(timeout=timeout, follow_redirects=False) as http:
        while True:
            attempts += 1
            headers = {"Content-Type": "application/json", "User-Agent": "preempt-webhook"}
            if secret:
                headers["Preempt-Signature"] = signature(secret, body)
            try:
                status = http.post(job["callback_url"], content=body, headers=headers).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            delivered = isinstance(status, int) and 200 <= status < 300
            store.r.hset(store.key("job", job_id), "webhook",
                         json.dumps({"attempts": attempts, "last_status": status, "delivered": delivered}))
            if delivered or time.monotonic() + wait > deadline:
                if not delivered:
                    log.warning("webhook of job %s not delivered after %d attempts (%s)", job_id, attempts, status)
                return
            time.sleep(wait)
            wait = min(wait * 2, 60.0)


def deliver_later(store, job_id: str, secret: str, retry_seconds: float) -> threading.Thread:
    """:func:`deliver` in a background thread, so the worker takes its next job meanwhile."""
    thread = threading.Thread(target=deliver, args=(store, job_id, secret, retry_seconds), daemon=True,
                              name=f"webhook-{job_id[:8]}")
    thread.start()
    return thread
