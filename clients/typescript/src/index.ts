// context-api's TypeScript client: per-user memory for LLM applications.
export * from "./client.js";
export * from "./errors.js";
export type { components, paths } from "./schema.js";
