//! JWT verification and the identity a verified token stands for.

use std::collections::HashSet;

use chrono::Utc;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{config::Config, validate};

/// The user a verified token identifies. A user is `(tenant, user_id)`: the same `sub` in two
/// tenants is two users.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: String,
    /// `None` for tokens without `tenant_id`.
    pub tenant: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
    /// Extra rooms this token may join, from the `rooms` claim.
    pub rooms: Vec<String>,
    /// The `exp` claim, seconds since the Unix epoch.
    pub expires_at: i64,
    pub is_publisher: bool,
}

impl Identity {
    /// Returns the tenant as stored, with the empty string for tenantless users.
    pub fn tenant_key(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }
}

/// The reason a token was rejected. Every variant becomes a 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Claims read from a token. `sub` and `tenant_id` may be strings or integers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(deserialize_with = "string_or_number")]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_number", skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    pub exp: i64,
    /// Checked by jsonwebtoken; declared so that a value of the wrong type is rejected
    /// instead of ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// Shortens serde's message about the claims ("missing field `sub` at line 1 column 40") to
/// the part that names the claim.
fn claim_problem(message: &str) -> &str {
    message.split(" at line").next().unwrap_or(message)
}

/// Checks tokens against the configured key, issuer and audience.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    publisher_roles: HashSet<String>,
    /// The HS256 secret, kept only when this server may mint tokens (demo and `token`).
    secret: Option<Vec<u8>>,
}

impl Verifier {
    /// Builds a verifier from the configuration. Without any key it makes an ephemeral
    /// HS256 secret, which lives as long as the process.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let (key, algorithms, secret) = if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("NOTIFY_JWT_PUBLIC_KEY_FILE {}: cannot read: {e}", path.display()))?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, vec![Algorithm::RS256], None)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, vec![Algorithm::ES256], None)
            } else {
                return Err(format!(
                    "NOTIFY_JWT_PUBLIC_KEY_FILE {}: not an RSA or EC public key in PEM form",
                    path.display()
                ));
            }
        } else {
            let secret = match &config.jwt_secret {
                Some(s) => s.as_bytes().to_vec(),
                None => {
                    let mut bytes = vec![0u8; 32];
                    rand::thread_rng().fill_bytes(&mut bytes);
                    bytes
                }
            };
            (DecodingKey::from_secret(&secret), vec![Algorithm::HS256], Some(secret))
        };

        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // jsonwebtoken only compares `iss` and `aud` when a token has them, so a configured
        // check must also make the claim required.
        // `sub` is required by `Claims` itself, which also accepts integers; jsonwebtoken's
        // own check would reject those.
        let mut required = vec!["exp"];
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier {
            key,
            validation,
            publisher_roles: config.publisher_roles.iter().cloned().collect(),
            secret,
        })
    }

    /// Verifies a token and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let invalid = |text: &str| AuthError::Invalid(text.to_string());
        // The header is read first so that `alg: none`, which jsonwebtoken cannot even
        // parse, gets a message about the algorithm rather than about the claims.
        if jsonwebtoken::decode_header(token).is_err() {
            return Err(invalid("malformed token or unsupported algorithm (`none` is never accepted)"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => invalid("token not valid yet (nbf)"),
            ErrorKind::InvalidSignature => invalid("signature does not match"),
            ErrorKind::InvalidAlgorithm => invalid("algorithm not accepted"),
            ErrorKind::InvalidIssuer => invalid("issuer not accepted"),
            ErrorKind::InvalidAudience => invalid("audience not accepted"),
            ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(format!("missing `{claim}` claim")),
            ErrorKind::Json(error) => {
                AuthError::Invalid(format!("claims: {}", claim_problem(&error.to_string())))
            }
            _ => invalid("malformed token"),
        })?;
        let claims = data.claims;
        for (value, problem) in [
            (Some(&claims.sub), "sub must be 1 to 255 characters without control characters"),
            (claims.tenant_id.as_ref(), "tenant_id must be 1 to 255 characters without control characters"),
        ] {
            if let Some(value) = value {
                if validate::identifier(value).is_err() {
                    return Err(invalid(problem));
                }
            }
        }
        let is_publisher = claims.role.as_ref().is_some_and(|role| self.publisher_roles.contains(role));
        Ok(Identity {
            user_id: claims.sub,
            tenant: claims.tenant_id,
            email: claims.email,
            role: claims.role,
            rooms: claims.rooms,
            expires_at: claims.exp,
            is_publisher,
        })
    }

    /// Signs a token with the HS256 secret. Fails when the server verifies with a public key,
    /// because it has no private key then.
    pub fn mint(&self, claims: &Claims) -> Result<String, String> {
        let secret =
            self.secret.as_ref().ok_or("tokens can only be minted with an HS256 secret, not a public key")?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
            .map_err(|e| format!("failed to sign token: {e}"))
    }
}

/// Builds claims for a token that expires `ttl` from now.
pub fn claims_for(
    sub: &str,
    role: Option<&str>,
    tenant: Option<&str>,
    email: Option<&str>,
    rooms: Vec<String>,
    ttl: std::time::Duration,
) -> Claims {
    let now = Utc::now().timestamp();
    Claims {
        sub: sub.to_string(),
        email: email.map(String::from),
        role: role.map(String::from),
        tenant_id: tenant.map(String::from),
        rooms,
        exp: now + ttl.as_secs() as i64,
        nbf: None,
        iat: Some(now),
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(i64),
    }
    Ok(match Id::deserialize(d)? {
        Id::Text(s) => s,
        Id::Number(n) => n.to_string(),
    })
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "string_or_number")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// Returns the token of an `Authorization: Bearer …` header. The scheme is matched without
/// regard to case, as RFC 9110 section 11.1 requires.
pub fn bearer_from_headers(headers: &axum::http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::Invalid("malformed Authorization header".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(AuthError::Invalid("Authorization header must be `Bearer <token>`".into())),
    }
}
