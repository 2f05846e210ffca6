"""Charts and the HTML report of a job, without torch: shared by the API and the workers."""
