"""The OpenID provider on Authlib: grants, endpoints, claims, discovery."""
