"""The customer-service e-mail: the reference app, composed on pm's public API (`customer_email.app:APP`)."""
