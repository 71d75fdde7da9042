"""The local Bluetooth LE radio (bleak on BlueZ)."""
