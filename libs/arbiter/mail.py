"""Email through Django's mail framework, over the SMTP server `ARBITER_EMAIL_URL` names (unset: no email).

A message that cannot be sent is logged and dropped: an email is a courtesy, never the reason work fails.
"""

from __future__ import annotations

import logging

from django.core.mail import EmailMessage, get_connection

from arbiter.config.typed_settings import arbiter_settings

logger = logging.getLogger(__name__)


def mail_send(*, to: str, subject: str, body: str) -> bool:
    """Send one plain-text email; False when email is off or the server refused it (logged)."""
    settings = arbiter_settings().email
    options = settings.connection_options()
    if options is None or not to:
        return False
    try:
        connection = get_connection(fail_silently=False, **options)
        sent = EmailMessage(
            subject=subject, body=body, from_email=settings.from_address, to=[to], connection=connection
        ).send()
    except Exception:
        logger.warning("an email could not be sent", extra={"subject": subject}, exc_info=True)
        return False
    return sent == 1
