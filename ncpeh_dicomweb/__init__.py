"""ncpeh-dicomweb: the imaging gateway of a MyHealth@EU NCPeH."""

__version__ = "0.1.0"
