//! A finished call to the origin (a JWKS or a feed page), as either build reads it from Envoy.

/// What the origin answered, or that the call failed.
#[derive(Debug, Clone)]
pub struct CallAnswer {
    /// `:status`; `None` if the call failed (no connection, reset, timeout).
    pub status: Option<u16>,
    /// `cache-control`.
    pub cache_control: Option<String>,
    /// The body, or why it could not be read.
    pub body: Result<Vec<u8>, String>,
}

impl CallAnswer {
    /// A failed call: no status, no body.
    pub fn failed() -> Self {
        Self {
            status: None,
            cache_control: None,
            body: Ok(Vec::new()),
        }
    }

    /// The body of a 200 no larger than `max`; anything else is the error to log.
    pub fn body_if_ok(&self, max: usize) -> Result<&[u8], String> {
        match self.status {
            Some(200) => {}
            Some(status) => return Err(format!("the origin answered {status}")),
            None => return Err("the call failed".to_string()),
        }
        let body = self.body.as_deref().map_err(Clone::clone)?;
        if body.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        Ok(body)
    }
}
