"""The recommended default CertificatePolicy set, shipped as `controller.default_policies`."""
