"""How the report writes a width: the paper's ``×1/8`` notation (a leaf every report module may
import)."""

from __future__ import annotations

from fractions import Fraction


def width_label(width: float, tex: bool = False) -> str:
    """``×1/8`` style label (the paper's notation), exact for widths like 3/8."""
    frac = Fraction(width).limit_denominator(64)
    text = f"{frac.numerator}" if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    return f"$\\times${text}" if tex else f"×{text}"
