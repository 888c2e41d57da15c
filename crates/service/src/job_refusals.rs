//! Why a job request or a cancel is refused, in terms of jobs; `envelope.rs` gives each its
//! code. Also what a client-chosen job id may be.

use wbia_lightglue_engine::job_board::JobStatus;

/// Longest client-chosen job id.
pub const MAX_JOBID_LEN: usize = 128;

/// Why a job id cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum JobIdError {
    Invalid,
    Taken,
}

/// A client-chosen job id: a UUID fits; so does any token of letters, digits and `._:-`, at
/// most [`MAX_JOBID_LEN`] long.
pub fn valid_jobid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOBID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A job id that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", match .error {
    JobIdError::Invalid => format!(
        "jobid must be 1 to {MAX_JOBID_LEN} letters, digits or '._:-' (a UUID fits); got {} characters",
        .jobid.chars().count()
    ),
    JobIdError::Taken => format!("job {} exists already; choose another jobid, or send none", .jobid),
})]
pub struct JobIdRefused {
    pub jobid: String,
    pub error: JobIdError,
}

impl JobIdRefused {
    pub(crate) fn new(jobid: &str, error: JobIdError) -> Self {
        Self {
            jobid: jobid.to_string(),
            error,
        }
    }
}

/// Why a `callback_url` is refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackRefused {
    #[error("callback_url {url:?}: {reason}")]
    NotAUrl { url: String, reason: String },
    #[error("callback_url {url:?}: only http and https callbacks are made")]
    NotHttp { url: String },
    #[error("callback_url host {host:?} is not among this service's --callback-hosts")]
    HostNotAllowed { host: String },
}

/// Why a job cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelRefused {
    #[error("job {jobid} is {status} and cannot be cancelled")]
    Ended { jobid: String, status: JobStatus },
    #[error("job {jobid} runs on replica {replica} ({status}): cancel it there")]
    Elsewhere {
        jobid: String,
        replica: String,
        status: JobStatus,
    },
    #[error("no job {jobid} here")]
    Unknown { jobid: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_tokens_of_bounded_length() {
        assert!(valid_jobid("0d9ee0f5-6a5e-4f2b-9c89-1b8a1d5b63c1"));
        assert!(valid_jobid("jobid-0001_a.b:c"));
        assert!(valid_jobid(&"a".repeat(MAX_JOBID_LEN)));
        assert!(!valid_jobid(&"a".repeat(MAX_JOBID_LEN + 1)));
        for bad in ["", "a b", "a/b", "a\"b", "é", "a\nb", "a?b"] {
            assert!(!valid_jobid(bad), "{bad:?}");
        }
    }
}
