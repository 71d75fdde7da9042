"""Moments of a visit -> decisions -> content: the touchpoints' intakes, the typed moments they
submit, the decision as a plan, and the journey that commits and posts it."""

from gateway.moments.app import AppPresence
from gateway.moments.decide import ANONYMOUS_MESSAGE, PERSONAL_MESSAGE, Plan, decide
from gateway.moments.journey import Journey
from gateway.moments.kiosk import Kiosks
from gateway.moments.moment import (
    CheckoutMoment,
    KioskMoment,
    Moment,
    Publisher,
    TabletMoment,
    ZoneMoment,
)
from gateway.moments.screens import ScreenHold, ZoneScreens
from gateway.moments.tablet import Tablets

__all__ = [
    "ANONYMOUS_MESSAGE",
    "PERSONAL_MESSAGE",
    "AppPresence",
    "CheckoutMoment",
    "Journey",
    "KioskMoment",
    "Kiosks",
    "Moment",
    "Plan",
    "Publisher",
    "ScreenHold",
    "TabletMoment",
    "Tablets",
    "ZoneMoment",
    "ZoneScreens",
    "decide",
]
