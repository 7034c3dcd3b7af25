// The baseline app of benches/storm.sh: Probot verifies each delivery's
// signature and parses it, and the handler does nothing else.
export default (app) => {
  app.on("pull_request.opened", async () => {});
};
