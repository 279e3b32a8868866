-- A trigram index for name search (ListMembers.name_contains of 3 or more
-- characters): FTS5 finds the members whose name_search holds the text,
-- the query then checks it exactly with LIKE as before.
--
-- The index needs a stable integer id per member: members' implicit rowid
-- is not one (VACUUM may renumber it), so member_names gives each member a
-- doc number and the FTS5 table indexes member_names (external content).
-- Triggers keep both in step with members inside the writing transaction:
-- enrolment, profile updates and erasure (name_search = '') alike.
-- The trigram tokenizer is case-sensitive here: name_search and the text
-- searched for are both lower-cased by the service (Unicode-aware).
CREATE TABLE member_names (
    doc         INTEGER PRIMARY KEY,
    member_id   TEXT NOT NULL UNIQUE,
    name_search TEXT NOT NULL
);

CREATE VIRTUAL TABLE member_names_fts USING fts5(
    name_search,
    content = 'member_names',
    content_rowid = 'doc',
    tokenize = 'trigram case_sensitive 1'
);

CREATE TRIGGER member_names_ai AFTER INSERT ON member_names BEGIN
    INSERT INTO member_names_fts (rowid, name_search) VALUES (new.doc, new.name_search);
END;
CREATE TRIGGER member_names_ad AFTER DELETE ON member_names BEGIN
    INSERT INTO member_names_fts (member_names_fts, rowid, name_search)
    VALUES ('delete', old.doc, old.name_search);
END;
CREATE TRIGGER member_names_au AFTER UPDATE ON member_names BEGIN
    INSERT INTO member_names_fts (member_names_fts, rowid, name_search)
    VALUES ('delete', old.doc, old.name_search);
    INSERT INTO member_names_fts (rowid, name_search) VALUES (new.doc, new.name_search);
END;

CREATE TRIGGER members_names_ai AFTER INSERT ON members BEGIN
    INSERT INTO member_names (member_id, name_search) VALUES (new.member_id, new.name_search);
END;
CREATE TRIGGER members_names_au AFTER UPDATE OF name_search ON members
WHEN old.name_search IS NOT new.name_search BEGIN
    UPDATE member_names SET name_search = new.name_search WHERE member_id = new.member_id;
END;
CREATE TRIGGER members_names_ad AFTER DELETE ON members BEGIN
    DELETE FROM member_names WHERE member_id = old.member_id;
END;

INSERT INTO member_names (member_id, name_search) SELECT member_id, name_search FROM members;
