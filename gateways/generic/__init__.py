"""A configurable signed-JSON HTTP connector for any processor."""
