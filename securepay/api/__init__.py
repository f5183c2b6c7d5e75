"""REST API v1: payment sessions for integrations (CRM, ERP, billing)."""
