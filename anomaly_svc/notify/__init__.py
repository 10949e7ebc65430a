"""Notifications of alerts by e-mail (SMTP) and Slack-compatible webhooks."""

from anomaly_svc.notify.notifier import Notifier
from anomaly_svc.notify.settings import NotificationsSection

__all__ = ["NotificationsSection", "Notifier"]
