-- Argo CD health of a cellule.ai WorkerGrant. Revoked and Expired are the
-- grant's intended end states, not failures: Healthy (with the reason in
-- the message), so they neither mark the Application Degraded nor hold a
-- sync wave. A grant suspended by spec.suspended is Suspended (it resumes
-- when set back to false). Installed as
-- resource.customizations.health.cellule.ai_WorkerGrant.
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local function holds(kind)
  local c = condition(kind)
  return c ~= nil and c.status == "True"
end
local function says(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

if obj.status == nil or obj.status.observedGeneration == nil then
  return { status = "Progressing", message = "Waiting for the operator's first status" }
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  return { status = "Progressing", message = "Waiting for the operator to observe generation " ..
    tostring(obj.metadata.generation) .. " (status is of generation " .. tostring(obj.status.observedGeneration) .. ")" }
end
-- Invalid as written, a worker id granted twice, a missing Pool.
if holds("Stalled") then
  return { status = "Degraded", message = says(condition("Stalled")) }
end
-- Waiting for approvedBy (four-eyes) or for the pool's signing key.
if holds("Reconciling") then
  return { status = "Progressing", message = says(condition("Reconciling")) }
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  if ready.reason == "Suspended" or obj.status.phase == "Suspended" then
    return { status = "Suspended", message = says(ready) }
  end
  local message = says(ready)
  if obj.status.token ~= nil and obj.status.token.expiresAt ~= nil then
    message = message .. "; expires " .. obj.status.token.expiresAt
  end
  return { status = "Healthy", message = message }
end
if ready ~= nil then
  return { status = "Progressing", message = says(ready) }
end
return { status = "Progressing", message = "Waiting for the Ready condition" }
