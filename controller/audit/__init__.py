"""The audit trail: hash-chained, signed JSON Lines records (`records`, pure), their file with
rotation (`log`), and forwarding to a SIEM as syslog (`siem` formats, `forward` transport)."""
