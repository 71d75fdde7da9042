"""Receipt printers on serial lines (ESC/POS over pyserial-asyncio-fast)."""

from drivers.escpos.printer import PrinterState, SerialPrinter

__all__ = ["PrinterState", "SerialPrinter"]
