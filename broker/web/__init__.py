"""HTTP surface: routes, pages, security headers. Talks only to broker.oidc."""
