"""The cloud link (aiomqtt to the chain's broker) and HTTPS artifact downloads."""

from drivers.cloud._fetch import Fetcher, https_fetcher
from drivers.cloud._link import CloudLink

__all__ = ["CloudLink", "Fetcher", "https_fetcher"]
