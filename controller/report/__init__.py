"""`fleetpki report`: a compliance report (HTML with inline SVG charts, CSV, JSON)."""
