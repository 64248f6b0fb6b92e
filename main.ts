import { loadPg } from "./src/postgres/internal/loadPg.js"

// The `npm start` entry: `pg` first, on its own (see loadPg), then the service, whose modules import it.
loadPg()
await import("./serve.js")
