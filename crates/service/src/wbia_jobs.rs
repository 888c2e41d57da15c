//! WBIA's engine as our jobs meet it: WBIA's own jobs are listed with ours, and a job's end is
//! announced to its `callback_url` as WBIA's engine announces it (docs/wbia-api.md §3.2).

use wbia_client::WbiaClient;

use crate::Result;

/// Where and how a job's end is announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub url: String,
    /// `GET`, `PUT`, else `POST`.
    pub method: String,
    /// Also send `status` and `json_result` (WBIA 4.0.4's `callback_detailed`).
    pub detailed: bool,
}

/// WBIA's engine jobs and the callbacks of ours.
#[derive(Clone)]
pub struct WbiaJobs {
    client: WbiaClient,
}

impl WbiaJobs {
    pub fn new(client: WbiaClient) -> Self {
        Self { client }
    }

    /// WBIA's own job ids (jobs of its other pipelines, passed through).
    pub async fn ids(&self) -> Result<Vec<String>> {
        Ok(self.client.job_ids().await?)
    }

    /// Announces that job `jobid` ended with `status` and the rendered `result`: `jobid`
    /// alone, or with `status` and `json_result` when the callback asked for detail. Failures
    /// are retried with the client's backoff before they are returned.
    pub async fn announce(
        &self,
        callback: &Callback,
        jobid: &str,
        status: &str,
        result: &str,
    ) -> Result<()> {
        let mut form = vec![("jobid", jobid)];
        if callback.detailed {
            form.extend([("status", status), ("json_result", result)]);
        }
        Ok(self
            .client
            .job_callback_with(&callback.url, &callback.method, &form)
            .await?)
    }
}
