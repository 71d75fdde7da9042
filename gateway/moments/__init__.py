"""Moments of a visit -> decisions -> content: the touchpoints' intakes, the typed moments they
submit (`moment`), the decision as a plan (`decide`) and what it shows (`render`), and the journey
that commits and posts it.
The package exports what the composition root wires; the rest is imported from its module."""

from gateway.moments.app import AppPresence
from gateway.moments.journey import Journey
from gateway.moments.kiosk import Kiosks
from gateway.moments.moment import Moment
from gateway.moments.screens import ScreenHold, ZoneScreens
from gateway.moments.tablet import Tablets

__all__ = ["AppPresence", "Journey", "Kiosks", "Moment", "ScreenHold", "Tablets", "ZoneScreens"]
