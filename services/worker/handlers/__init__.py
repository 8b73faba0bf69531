"""The built-in job types. Importing this package registers them."""

from services.worker.handlers import (
    echo,
    generate_report,
    resize_image,
    scrape_website,
    send_email,
    send_notification,
)

__all__ = ["echo", "generate_report", "resize_image", "scrape_website", "send_email",
           "send_notification"]
