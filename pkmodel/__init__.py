"""pkmodel: compartmental PK/PD modelling of antibody-drug conjugates."""

__version__ = "0.1.0"
