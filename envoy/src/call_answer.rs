//! A finished call to the origin (a JWKS or a feed page), as either build reads it from Envoy,
//! and the feed poll's conditional request ([`FeedTag`]).

use std::borrow::Cow;

use edgeauth_core::FeedNext;

/// What the origin answered, or that the call failed.
#[derive(Debug, Clone)]
pub struct CallAnswer {
    /// `:status`; `None` if the call failed (no connection, reset, timeout).
    pub status: Option<u16>,
    /// `cache-control`.
    pub cache_control: Option<String>,
    /// `etag`.
    pub etag: Option<String>,
    /// The body, or why it could not be read.
    pub body: Result<Vec<u8>, String>,
}

impl CallAnswer {
    /// A failed call: no status, no body.
    pub fn failed() -> Self {
        Self {
            status: None,
            cache_control: None,
            etag: None,
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

    /// A feed poll's page: a 200's body, or, for a 304 (the origin's head is still the poll's
    /// cursor `after`, which the origin answers only to the tag it gave for that head), the empty
    /// page at `after` that says the same. Anything else is the error to log.
    pub fn feed_page(&self, after: u64, max: usize) -> Result<Cow<'_, [u8]>, String> {
        if self.status == Some(304) {
            return Ok(Cow::Owned(
                format!(r#"{{"entries":[],"next":{after}}}"#).into_bytes(),
            ));
        }
        self.body_if_ok(max).map(Cow::Borrowed)
    }
}

/// The feed's validator: the `ETag` of the last page that left the reader caught up, with the
/// cursor it was given at. A poll from that cursor sends it back (`If-None-Match`), and while
/// the origin's head has not moved it answers 304 with no body. A tag is only ever sent from the
/// cursor it came with; a page that moved the reader without catching it up drops it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedTag(Option<(u64, String)>);

impl FeedTag {
    /// What to send as `If-None-Match` from `cursor`.
    pub fn for_cursor(&self, cursor: u64) -> Option<&str> {
        self.0
            .as_ref()
            .filter(|(at, _)| *at == cursor)
            .map(|(_, tag)| tag.as_str())
    }

    /// After `answer` was taken and left the reader at `cursor`, `next` to do.
    pub fn update(&mut self, answer: &CallAnswer, next: FeedNext, cursor: u64) {
        match (answer.status, next) {
            // Not modified: the tag still names the head.
            (Some(304), _) => {}
            (Some(200), FeedNext::CaughtUp) => {
                self.0 = answer.etag.clone().map(|tag| (cursor, tag));
            }
            _ => self.0 = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, etag: Option<&str>, body: &str) -> CallAnswer {
        CallAnswer {
            status: Some(status),
            cache_control: None,
            etag: etag.map(str::to_string),
            body: Ok(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_304_is_the_empty_page_at_the_polls_cursor() {
        let not_modified = answer(304, Some("\"7\""), "");
        let page = not_modified.feed_page(7, 1024).expect("a page");
        let page: edgeauth_core::FeedPage = serde_json::from_slice(&page).expect("a feed page");
        assert!(page.entries.is_empty());
        assert_eq!(page.next, 7);
        assert!(answer(503, None, "").feed_page(7, 1024).is_err());
        let ok = answer(200, None, r#"{"entries":[],"next":9}"#);
        assert_eq!(
            ok.feed_page(7, 1024).expect("a page").as_ref(),
            br#"{"entries":[],"next":9}"#
        );
    }

    #[test]
    fn a_tag_is_sent_only_from_the_cursor_it_was_given_at() {
        let mut tag = FeedTag::default();
        tag.update(&answer(200, Some("\"7\""), ""), FeedNext::CaughtUp, 7);
        assert_eq!(tag.for_cursor(7), Some("\"7\""));
        assert_eq!(tag.for_cursor(6), None, "another cursor is owed a page");
        tag.update(&answer(304, None, ""), FeedNext::CaughtUp, 7);
        assert_eq!(tag.for_cursor(7), Some("\"7\""), "kept while not modified");
        // A full page moved the reader on: the tag named an older head.
        tag.update(&answer(200, Some("\"9\""), ""), FeedNext::ReadMore, 8);
        assert_eq!((tag.for_cursor(8), tag.for_cursor(7)), (None, None));
        // A page from the store has no tag, nor does a failed call.
        tag.update(&answer(200, Some("\"9\""), ""), FeedNext::CaughtUp, 9);
        tag.update(&answer(200, None, ""), FeedNext::CaughtUp, 9);
        assert_eq!(tag.for_cursor(9), None);
    }
}
