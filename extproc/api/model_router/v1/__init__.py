"""Generated from proto/ by extproc.api.generate; do not edit."""
