"""vhdtool: prepare and validate Linux disk images offline before uploading them to Azure."""

__version__ = "0.1.0"
