"""lcmsquant: triple-quadrupole LC-MS/MS quantitation judged by ICH M10."""

__version__ = "0.1.0"
