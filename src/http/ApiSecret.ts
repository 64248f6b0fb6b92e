import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { createHash, timingSafeEqual } from "node:crypto"

const digest = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest()

/**
 * Whether a request may go on: the server has no secret (`ELECTRIC_INSECURE`),
 * or the request presents it (`secret` or `api_secret`). Every handler that
 * acts checks it. Both sides are hashed and the digests compared in constant
 * time, so response times reveal neither how much of a guess was right nor
 * the secret's length.
 */
export const isAuthorized = (
  secret: Option.Option<Redacted.Redacted<string>>,
  presented: string | undefined
): boolean => {
  if (Option.isNone(secret)) return true
  if (presented === undefined) return false
  return timingSafeEqual(digest(presented), digest(Redacted.value(secret.value)))
}
