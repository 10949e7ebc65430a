"""Delivering one message to one channel: SMTP (aiosmtplib) or a Slack-compatible webhook.

A sender raises :class:`DeliveryFailed` saying whether a retry can help (connection
problems, timeouts, SMTP 4xx, HTTP 5xx and 429) or not (SMTP 5xx, other HTTP 4xx). Its
reason never holds a secret: for a webhook only the status code or the error class, since
an HTTP library's message can quote the URL. httpx's own request log line is scrubbed of
webhook URLs.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx

from anomaly_svc.notify.settings import SmtpChannel, WebhookChannel


@dataclass(frozen=True)
class Message:
    subject: str
    text: str


class DeliveryFailed(Exception):
    def __init__(self, reason: str, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Sender(ABC):
    name: str

    @abstractmethod
    async def send(self, message: Message) -> None:
        """Deliver, or raise DeliveryFailed."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


class SmtpSender(Sender):
    def __init__(self, settings: SmtpChannel) -> None:
        self.settings = settings
        self.name = settings.name

    async def send(self, message: Message) -> None:
        s = self.settings
        email = EmailMessage()
        email["From"] = s.sender
        email["To"] = ", ".join(s.recipients)
        email["Subject"] = f"{s.subject_prefix} {message.subject}".strip()
        email.set_content(message.text)
        try:
            await aiosmtplib.send(
                email,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password or None,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP {exc.code}", retryable=400 <= exc.code < 500) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"SMTP {type(exc).__name__}", retryable=True) from None

    async def close(self) -> None:
        """Each delivery opens and closes its own connection."""


class SecretScrubber(logging.Filter):
    """Hides registered secrets in log records: httpx logs every request's full URL at INFO,
    and a webhook URL is a credential."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, HIDDEN)
                record.msg, record.args = text, None
        return True


HIDDEN = "[webhook URL hidden]"
SCRUBBER = SecretScrubber()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(SCRUBBER)


class WebhookSender(Sender):
    def __init__(self, settings: WebhookChannel) -> None:
        self.settings = settings
        self.name = settings.name
        SCRUBBER.secrets.add(settings.url)
        self.client = httpx.AsyncClient(timeout=settings.timeout_s, verify=settings.verify_tls)

    async def send(self, message: Message) -> None:
        try:
            response = await self.client.post(
                self.settings.url, json={"text": f"*{message.subject}*\n{message.text}"}
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"HTTP {type(exc).__name__}", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status == 429
        raise DeliveryFailed(
            f"HTTP {status}", retryable=retryable, retry_after_s=_retry_after(response)
        )

    async def close(self) -> None:
        await self.client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def make_sender(settings: SmtpChannel | WebhookChannel) -> Sender:
    if isinstance(settings, SmtpChannel):
        return SmtpSender(settings)
    return WebhookSender(settings)
