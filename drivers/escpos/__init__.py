"""Receipt printers on serial lines, raw TCP (port 9100) and usblp (ESC/POS)."""

from drivers.escpos.printer import EscposPrinter, PrinterState

__all__ = ["EscposPrinter", "PrinterState"]
