"""Launch configs: Python files with get_config(arg) -> ConfigDict; default.py holds the full schema."""
