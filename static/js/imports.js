// Settings page: follow the import jobs still queued or running (GET /api/v1/imports/<id>/ every
// 1.5 s), show their progress, and reload the page once one ends, so its report shows.
(function () {
  "use strict";
  const POLL_MS = 1500;

  function describe(job) {
    if (job.status === "queued") return "Waiting for a worker…";
    if (job.status === "running") return `Importing: ${job.processed} of ${job.total} conversations…`;
    if (job.status === "failed") return `Failed: ${job.error}`;
    return `Done: ${job.imported} imported, ${job.skipped} skipped.`;
  }

  function follow(item) {
    const status = item.querySelector(".import-status");
    async function poll() {
      let job;
      try {
        const response = await fetch(item.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!response.ok) throw new Error(String(response.status));
        job = await response.json();
      } catch (error) {
        status.textContent = `Could not read the import's progress (${error.message}); retrying…`;
        setTimeout(poll, POLL_MS * 2);
        return;
      }
      status.textContent = describe(job);  // text, never HTML: titles and errors come from the file
      if (job.status === "done" || job.status === "failed") {
        window.location.reload();
        return;
      }
      setTimeout(poll, POLL_MS);
    }
    setTimeout(poll, POLL_MS);
  }

  document.querySelectorAll(".import-job").forEach((item) => {
    if (item.dataset.status === "queued" || item.dataset.status === "running") follow(item);
  });
})();
