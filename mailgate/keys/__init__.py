"""API keys: the credentials an application presents, to the REST API (Bearer) or to the SMTP
relay (AUTH username = the key's name, password = the key). The model, its scopes, the lookup
and the per-key rate live here, below the mail layer, so that the relay and the API check a key
the same way; the rows keep the `api` app label (and table) they always had."""
